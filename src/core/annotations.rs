//! The annotation way in: a Deployment annotated `sluice.dev/policy: NAME` stands for a Canary of
//! the same name that inherits the named CanaryPolicy, with a few scalar overrides by annotation.
//! This module reads those annotations and builds that Canary's spec, or names each annotation that
//! is wrong and why. It is shared by the controller (which writes the Canary, and reports the
//! errors in the Canary's `InvalidSpec` condition) and by `sluice lint`, so both say the same.
//!
//! Overrides are merged with the policy here, not by `policyRef`'s top-level override rule: an
//! annotation sets one scalar (`sluice.dev/service` the Service's name, not its port), so the
//! nested object it lands in keeps the policy's other fields.

use std::collections::BTreeMap;

use crate::api::names;
use crate::api::{
    AnalysisSpec, CanarySpec, CanaryStrategy, Duration, GatewayApiRouter, IstioRouter, NginxRouter,
    NoRouter, ObjectRef, PolicyRef, RolloutSpec, RouterSpec, ServiceRouter, ServiceSpec, SmiRouter,
    StrategySpec, TargetRef, TraefikRouter,
};

use super::validate::FieldError;

/// The values `sluice.dev/router` accepts, named as the fields of `spec.router`.
pub const ROUTERS: &[&str] = &[
    "gatewayAPI",
    "nginx",
    "istio",
    "smi",
    "traefik",
    "service",
    "none",
];

/// The sluice annotations of a Deployment, each parsed; `errors` names every one that is not.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    /// `sluice.dev/policy`: the CanaryPolicy that opts the Deployment in.
    pub policy: Option<String>,
    pub step_weight: Option<i32>,
    pub max_weight: Option<i32>,
    pub interval: Option<Duration>,
    pub threshold: Option<i32>,
    pub router: Option<String>,
    pub service: Option<String>,
    pub errors: Vec<FieldError>,
}

/// The field path of an annotation, as errors name it.
pub fn field(annotation: &str) -> String {
    format!("metadata.annotations[{annotation}]")
}

/// The `sluice.dev/policy` value, when the annotations opt the Deployment in.
pub fn policy_of(annotations: &BTreeMap<String, String>) -> Option<&str> {
    annotations
        .get(names::POLICY_ANNOTATION)
        .map(String::as_str)
}

/// Parses every `sluice.dev/` annotation (others are not sluice's and are ignored).
pub fn parse(annotations: &BTreeMap<String, String>) -> Overrides {
    let mut out = Overrides::default();
    let mut errors = Vec::new();
    for (name, value) in annotations
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{}/", names::GROUP)))
    {
        let mut fail = |reason: String| errors.push(FieldError::new(field(name), reason));
        match name.as_str() {
            names::POLICY_ANNOTATION => {
                if is_name(value, 253) {
                    out.policy = Some(value.clone());
                } else {
                    fail(format!(
                        "{value:?} is not a valid CanaryPolicy name (lower-case letters, digits, '-' and '.')"
                    ));
                }
            }
            names::STEP_WEIGHT_ANNOTATION | names::MAX_WEIGHT_ANNOTATION => {
                match value.trim().parse::<i32>() {
                    Ok(w) if (1..=100).contains(&w) => {
                        if name == names::STEP_WEIGHT_ANNOTATION {
                            out.step_weight = Some(w);
                        } else {
                            out.max_weight = Some(w);
                        }
                    }
                    Ok(_) | Err(_) => fail(format!("{value:?} must be an integer from 1 to 100")),
                }
            }
            names::INTERVAL_ANNOTATION => match Duration::parse(value.trim()) {
                Ok(d) if d.is_zero() => fail("must not be zero".into()),
                Ok(d) => out.interval = Some(d),
                Err(e) => fail(e.to_string()),
            },
            names::THRESHOLD_ANNOTATION => match value.trim().parse::<i32>() {
                Ok(t) if (1..=100).contains(&t) => out.threshold = Some(t),
                Ok(_) | Err(_) => fail(format!(
                    "{value:?} must be an integer from 1 to 100 (failed checks before rollback)"
                )),
            },
            names::ROUTER_ANNOTATION => {
                if ROUTERS.contains(&value.as_str()) {
                    out.router = Some(value.clone());
                } else {
                    fail(format!(
                        "{value:?} is not a router: use one of {}",
                        ROUTERS.join(", ")
                    ));
                }
            }
            names::SERVICE_ANNOTATION => {
                if is_label(value) {
                    out.service = Some(value.clone());
                } else {
                    fail(format!(
                        "{value:?} is not a valid Service name (a DNS label: lower-case letters, digits and '-', at most 63)"
                    ));
                }
            }
            unknown => fail(format!(
                "unknown sluice annotation {unknown:?}; known ones are {}",
                names::DEPLOYMENT_ANNOTATIONS.join(", ")
            )),
        }
    }
    if let (Some(step), Some(max)) = (out.step_weight, out.max_weight)
        && max < step
    {
        errors.push(FieldError::new(
            field(names::MAX_WEIGHT_ANNOTATION),
            format!("max-weight {max} must be at least step-weight {step}"),
        ));
    }
    out.errors = errors;
    out
}

/// The spec of the Canary that stands for Deployment `deployment` with these annotations, given
/// the CanaryPolicy they name (`None` when it does not exist). Every error names the annotation
/// to fix; the spec is then not to be written.
pub fn canary_spec(
    deployment: &str,
    overrides: &Overrides,
    policy: Option<&RolloutSpec>,
) -> Result<CanarySpec, Vec<FieldError>> {
    let mut errors = overrides.errors.clone();
    let Some(policy_name) = &overrides.policy else {
        if errors.is_empty() {
            errors.push(FieldError::new(
                field(names::POLICY_ANNOTATION),
                "is required: it names the CanaryPolicy that opts the Deployment in",
            ));
        }
        return Err(errors);
    };
    let Some(policy) = policy else {
        errors.push(FieldError::new(
            field(names::POLICY_ANNOTATION),
            format!("CanaryPolicy {policy_name:?} does not exist"),
        ));
        return Err(errors);
    };
    let mut rollout = RolloutSpec::default();

    if overrides.step_weight.is_some() || overrides.max_weight.is_some() {
        match strategy_with_weights(policy, overrides) {
            Ok(strategy) => rollout.strategy = Some(strategy),
            Err(error) => errors.push(error),
        }
    }
    if overrides.interval.is_some() || overrides.threshold.is_some() {
        rollout.analysis = Some(AnalysisSpec {
            interval: overrides.interval,
            threshold: overrides.threshold,
            ..AnalysisSpec::default()
        });
    }
    if let Some(service) = &overrides.service {
        match &policy.service {
            Some(base) => {
                rollout.service = Some(ServiceSpec {
                    name: Some(service.clone()),
                    port: base.port,
                });
            }
            None => errors.push(FieldError::new(
                field(names::SERVICE_ANNOTATION),
                format!(
                    "CanaryPolicy {policy_name:?} sets no service port, so a Service name alone cannot be used; set spec.service in the policy"
                ),
            )),
        }
    }
    if let Some(router) = &overrides.router {
        let service = overrides
            .service
            .clone()
            .or_else(|| policy.service.as_ref().and_then(|s| s.name.clone()))
            .unwrap_or_else(|| deployment.to_owned());
        rollout.router = Some(router_named(router, &service));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(CanarySpec {
        target_ref: TargetRef {
            api_version: "apps/v1".to_owned(),
            kind: "Deployment".to_owned(),
            name: deployment.to_owned(),
        },
        policy_ref: Some(PolicyRef {
            name: policy_name.clone(),
        }),
        rollout,
    })
}

/// The policy's canary strategy with the annotated weights in it.
fn strategy_with_weights(
    policy: &RolloutSpec,
    overrides: &Overrides,
) -> Result<StrategySpec, FieldError> {
    let annotation = if overrides.step_weight.is_some() {
        names::STEP_WEIGHT_ANNOTATION
    } else {
        names::MAX_WEIGHT_ANNOTATION
    };
    let base = match &policy.strategy {
        None => CanaryStrategy::default(),
        Some(StrategySpec {
            canary: Some(canary),
            ..
        }) => canary.clone(),
        Some(_) => {
            return Err(FieldError::new(
                field(annotation),
                "applies to canary steps, but the CanaryPolicy's strategy is blueGreen or abTesting",
            ));
        }
    };
    let mut canary = base;
    if let Some(step) = overrides.step_weight {
        canary.step_weight = Some(step);
        canary.step_weights = None;
    }
    if let Some(max) = overrides.max_weight {
        if canary.step_weight.is_none() {
            return Err(FieldError::new(
                field(names::MAX_WEIGHT_ANNOTATION),
                "applies to stepWeight, but the CanaryPolicy lists stepWeights; set sluice.dev/step-weight too",
            ));
        }
        canary.max_weight = Some(max);
    }
    if let (Some(step), Some(max)) = (canary.step_weight, canary.max_weight)
        && max < step
    {
        return Err(FieldError::new(
            field(annotation),
            format!("max weight {max} must be at least step weight {step}"),
        ));
    }
    Ok(StrategySpec {
        canary: Some(canary),
        ..StrategySpec::default()
    })
}

/// A router of kind `router`, naming the object of the user's that carries the routes after the
/// Service (the convention: the HTTPRoute, Ingress or VirtualService is named like the Service).
fn router_named(router: &str, service: &str) -> RouterSpec {
    let object = || ObjectRef {
        name: service.to_owned(),
        namespace: None,
    };
    match router {
        "gatewayAPI" => RouterSpec {
            gateway_api: Some(GatewayApiRouter {
                http_route: object(),
            }),
            ..RouterSpec::default()
        },
        "nginx" => RouterSpec {
            nginx: Some(NginxRouter { ingress: object() }),
            ..RouterSpec::default()
        },
        "istio" => RouterSpec {
            istio: Some(IstioRouter {
                virtual_service: object(),
            }),
            ..RouterSpec::default()
        },
        "smi" => RouterSpec {
            smi: Some(SmiRouter::default()),
            ..RouterSpec::default()
        },
        "traefik" => RouterSpec {
            traefik: Some(TraefikRouter::default()),
            ..RouterSpec::default()
        },
        "service" => RouterSpec {
            service: Some(ServiceRouter {}),
            ..RouterSpec::default()
        },
        // "none", the only other value `parse` lets through.
        _ => RouterSpec {
            none: Some(NoRouter {}),
            ..RouterSpec::default()
        },
    }
}

/// A DNS subdomain name (what Kubernetes object names are), at most `max` long.
fn is_name(value: &str, max: usize) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value.split('.').all(is_label_part)
        && !value.starts_with('.')
}

/// A DNS label (what Service names are).
fn is_label(value: &str) -> bool {
    value.len() <= 63 && is_label_part(value)
}

fn is_label_part(part: &str) -> bool {
    let bytes = part.as_bytes();
    !bytes.is_empty()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn policy(yaml: &str) -> RolloutSpec {
        serde_saphyr::from_str(yaml).expect("policy parses")
    }

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn a_step_weight_override_keeps_the_policys_max_weight() {
        let parsed = parse(&annotations(&[
            ("sluice.dev/policy", "web"),
            ("sluice.dev/step-weight", "20"),
        ]));
        let policy = policy("strategy: {canary: {stepWeight: 10, maxWeight: 60}}");
        let spec = canary_spec("checkout", &parsed, Some(&policy)).expect("valid");
        let canary = spec
            .rollout
            .strategy
            .and_then(|s| s.canary)
            .expect("canary");
        assert_eq!(
            (canary.step_weight, canary.max_weight),
            (Some(20), Some(60))
        );
        assert_eq!(spec.target_ref.name, "checkout");
        assert_eq!(spec.policy_ref.map(|p| p.name).as_deref(), Some("web"));
    }

    #[test]
    fn a_service_override_keeps_the_policys_port_and_names_the_route() {
        let parsed = parse(&annotations(&[
            ("sluice.dev/policy", "web"),
            ("sluice.dev/service", "checkout-http"),
            ("sluice.dev/router", "gatewayAPI"),
        ]));
        let policy = policy("service: {port: 8080}");
        let spec = canary_spec("checkout", &parsed, Some(&policy)).expect("valid");
        let service = spec.rollout.service.expect("service");
        assert_eq!(
            (service.name.as_deref(), service.port),
            (Some("checkout-http"), 8080)
        );
        let route = spec
            .rollout
            .router
            .and_then(|r| r.gateway_api)
            .expect("route");
        assert_eq!(route.http_route.name, "checkout-http");
    }

    #[test]
    fn a_bad_value_names_its_annotation_and_the_spec_is_not_built() {
        let parsed = parse(&annotations(&[
            ("sluice.dev/policy", "web"),
            ("sluice.dev/interval", "soon"),
            ("sluice.dev/threshold", "0"),
            ("sluice.dev/stepweight", "5"),
        ]));
        let errors = canary_spec("checkout", &parsed, Some(&RolloutSpec::default())).unwrap_err();
        assert_eq!(
            fields(&errors),
            [
                "metadata.annotations[sluice.dev/interval]",
                "metadata.annotations[sluice.dev/stepweight]",
                "metadata.annotations[sluice.dev/threshold]",
            ]
        );
    }

    #[test]
    fn a_missing_policy_is_named_on_the_policy_annotation() {
        let parsed = parse(&annotations(&[("sluice.dev/policy", "gone")]));
        let errors = canary_spec("checkout", &parsed, None).unwrap_err();
        assert_eq!(fields(&errors), ["metadata.annotations[sluice.dev/policy]"]);
        assert!(errors[0].reason.contains("\"gone\" does not exist"));
    }

    #[test]
    fn max_weight_cannot_apply_to_a_policy_with_a_step_list() {
        let parsed = parse(&annotations(&[
            ("sluice.dev/policy", "web"),
            ("sluice.dev/max-weight", "30"),
        ]));
        let policy = policy("strategy: {canary: {stepWeights: [5, 10, 50]}}");
        let errors = canary_spec("checkout", &parsed, Some(&policy)).unwrap_err();
        assert_eq!(
            fields(&errors),
            ["metadata.annotations[sluice.dev/max-weight]"]
        );
    }

    #[test]
    fn step_weights_cannot_apply_to_a_blue_green_policy() {
        let parsed = parse(&annotations(&[
            ("sluice.dev/policy", "web"),
            ("sluice.dev/step-weight", "30"),
        ]));
        let policy = policy("strategy: {blueGreen: {iterations: 3}}");
        let errors = canary_spec("checkout", &parsed, Some(&policy)).unwrap_err();
        assert_eq!(
            fields(&errors),
            ["metadata.annotations[sluice.dev/step-weight]"]
        );
    }

    #[test]
    fn other_annotations_are_not_sluices() {
        let parsed = parse(&annotations(&[
            ("sluice.dev/policy", "web"),
            ("example.com/sluice.dev", "x"),
            ("kubernetes.io/change-cause", "deploy"),
        ]));
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    }
}
