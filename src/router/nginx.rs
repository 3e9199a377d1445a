//! NGINX Ingress: a sluice-owned canary Ingress `<ingress>-canary`, a copy of the user's Ingress
//! (class, TLS, and the rules' paths that send to the stable Service) pointing at
//! `<service>-canary`, with ingress-nginx's canary annotations. Pure.
//!
//! ingress-nginx pairs a canary Ingress with the primary one by host and path, so only paths that
//! reach the stable Service are copied; paths to other Services would otherwise get a canary share
//! of their own traffic. A/B uses `canary-by-header` (one header per Ingress: more than one header
//! condition is an error here, not a silent subset). The user's annotations are not copied:
//! ingress-nginx ignores most of them on a canary Ingress, and some (auth, rewrites) differ.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{BuildRouteError, RouteInputs};
use crate::api::names::{canary_name, nginx};
use crate::api::{HeaderMatchType, HttpMatch};
use crate::workload::managed_labels;

use super::kind::INGRESS;

/// The canary Ingress for the user's `ingress`, sending `weight` percent (and requests carrying the
/// one header of `matches`) to the canary Service.
pub fn canary_ingress(
    ingress: &Ingress,
    inputs: &RouteInputs,
    weight: i32,
    matches: &[HttpMatch],
) -> Result<Ingress, BuildRouteError> {
    let name = ingress.metadata.name.clone().unwrap_or_default();
    let namespace = ingress
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| inputs.canary.namespace.clone());
    let spec = ingress.spec.clone().unwrap_or_default();

    let default_backend = spec
        .default_backend
        .as_ref()
        .filter(|b| is_stable(b, &namespace, inputs))
        .map(|b| to_canary(b, inputs));
    let rules: Vec<IngressRule> = spec
        .rules
        .iter()
        .flatten()
        .filter_map(|rule| {
            let paths: Vec<_> = rule
                .http
                .as_ref()?
                .paths
                .iter()
                .filter(|p| is_stable(&p.backend, &namespace, inputs))
                .map(|p| {
                    let mut path = p.clone();
                    path.backend = to_canary(&p.backend, inputs);
                    path
                })
                .collect();
            (!paths.is_empty()).then(|| IngressRule {
                host: rule.host.clone(),
                http: Some(HTTPIngressRuleValue { paths }),
            })
        })
        .collect();
    if rules.is_empty() && default_backend.is_none() {
        return Err(BuildRouteError::NoStableBackend {
            kind: INGRESS.kind,
            name: format!("{namespace}/{name}"),
            service: inputs.service.clone(),
        });
    }

    let mut annotations = BTreeMap::from([
        (nginx::CANARY.to_owned(), "true".to_owned()),
        (nginx::CANARY_WEIGHT.to_owned(), weight.to_string()),
    ]);
    match matches {
        [] => {}
        [only] => match only.headers.as_slice() {
            [header] => {
                annotations.insert(nginx::CANARY_BY_HEADER.to_owned(), header.name.clone());
                let key = match header.match_type {
                    HeaderMatchType::Exact => nginx::CANARY_BY_HEADER_VALUE,
                    HeaderMatchType::RegularExpression => nginx::CANARY_BY_HEADER_PATTERN,
                };
                annotations.insert(key.to_owned(), header.value.clone());
            }
            _ => return Err(unsupported()),
        },
        _ => return Err(unsupported()),
    }

    Ok(Ingress {
        metadata: ObjectMeta {
            name: Some(canary_name(&name)),
            namespace: Some(namespace),
            labels: Some(managed_labels()),
            annotations: Some(annotations),
            owner_references: Some(vec![inputs.canary.owner_reference()]),
            ..ObjectMeta::default()
        },
        spec: Some(IngressSpec {
            ingress_class_name: spec.ingress_class_name.clone(),
            default_backend,
            rules: (!rules.is_empty()).then_some(rules),
            tls: spec.tls.clone(),
        }),
        status: None,
    })
}

fn unsupported() -> BuildRouteError {
    BuildRouteError::MatchesUnsupported {
        router: "nginx",
        why: "ingress-nginx routes by exactly one header (canary-by-header)",
    }
}

/// Whether `backend` is the stable Service. Ingress backends are in the Ingress's namespace, so an
/// Ingress in another namespace never reaches it (and the canary Ingress, owned by the Canary,
/// must live in the Canary's namespace: owner references do not cross namespaces).
fn is_stable(backend: &IngressBackend, namespace: &str, inputs: &RouteInputs) -> bool {
    namespace == inputs.canary.namespace
        && backend
            .service
            .as_ref()
            .is_some_and(|service| service.name == inputs.service)
}

/// The backend with the Service renamed; the port (number or name) is the same on the canary
/// Service, which copies the stable one's ports.
fn to_canary(backend: &IngressBackend, inputs: &RouteInputs) -> IngressBackend {
    let mut backend = backend.clone();
    if let Some(service) = backend.service.as_mut() {
        service.name = inputs.canary_service();
    }
    backend
}

/// The canary weight a canary Ingress carries: `None` unless it is marked as a canary;
/// ingress-nginx reads a missing `canary-weight` as 0.
pub fn ingress_weight(ingress: &Ingress) -> Option<i32> {
    let annotations = ingress.metadata.annotations.as_ref()?;
    if annotations.get(nginx::CANARY).map(String::as_str) != Some("true") {
        return None;
    }
    match annotations.get(nginx::CANARY_WEIGHT) {
        None => Some(0),
        Some(text) => text.trim().parse().ok(),
    }
}

/// Whether the canary Ingress routes by header (A/B).
pub fn ingress_matched(ingress: &Ingress) -> bool {
    ingress_weight(ingress).is_some()
        && ingress
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(nginx::CANARY_BY_HEADER))
}

/// What will surprise about the user's Ingress: with ingress-nginx's default
/// `--metrics-per-host=true`, a rule without `host` produces no request metrics at all (METRICS.md;
/// ingress-nginx issues 3713 and 4657), so analysis of the canary would get no data.
pub fn warnings(ingress: &Ingress) -> Vec<String> {
    let name = ingress.metadata.name.as_deref().unwrap_or_default();
    ingress
        .spec
        .iter()
        .flat_map(|spec| spec.rules.iter().flatten())
        .enumerate()
        .filter(|(_, rule)| rule.host.as_deref().is_none_or(str::is_empty))
        .map(|(index, _)| {
            format!(
                "Ingress {name}: rule {index} has no host; with ingress-nginx's default \
                 --metrics-per-host=true it produces no request metrics, so analysis gets no data \
                 (set a host, or run ingress-nginx with --metrics-per-host=false)"
            )
        })
        .collect()
}
