//! Gateway API `HTTPRoute` (gateway.networking.k8s.io/v1): weights on the user's rules whose
//! backendRefs point at the stable Service, a canary backendRef `<service>-canary` beside each, and
//! for A/B one extra rule per such rule sending header-matched requests to the canary. Pure.
//!
//! Server-side apply: `spec.rules` is an atomic list (and so are `backendRefs` and `matches`),
//! owned by whoever created the route. Recording 05 shows a second manager changing it gets 409
//! `conflict with ... .spec.rules`, and `force=true` moves the whole list to that manager. So the
//! body built here carries the complete `rules` list copied from the live route with only sluice's
//! edits, and nothing else of the spec (not `parentRefs` or `hostnames`, which stay the user's),
//! and is applied with force. Once sluice owns `rules` it must keep sending them: an apply without
//! `rules` would delete the user's routes, so removal is the weight-0 body, not an empty one. A
//! later edit of the rules by the user takes ownership back; the next read-back then differs from
//! status and the controller applies again. The body carries the `resourceVersion` of the route
//! the rules were copied from: a forced apply of a whole list built from a stale copy would revert
//! an edit the user made in between, so it is made conditional and fails with 409 instead.
//!
//! Weight 0 without matches removes every canary backendRef and A/B rule and leaves the stable
//! backendRef at weight 100 (the user's original weight is not remembered; a lone backend gets all
//! traffic whatever its non-zero weight).

use serde_json::{Map, Value, json};

use super::{BuildRouteError, RouteInputs, share};
use crate::api::{HeaderMatchType, HttpMatch};

use super::kind::HTTP_ROUTE;

/// Schema limits of `spec.rules` (maxItems), a rule's `matches` (maxItems), and the CEL rule on
/// the sum of matches over all rules.
const MAX_RULES: usize = 16;
const MAX_MATCHES_PER_RULE: usize = 64;
const MAX_MATCHES_TOTAL: usize = 128;

/// The apply body for `route` (the live user's HTTPRoute) routing `weight` percent to the canary,
/// and requests matching any of `matches` entirely to it.
pub fn http_route_patch(
    route: &Value,
    inputs: &RouteInputs,
    weight: i32,
    matches: &[HttpMatch],
) -> Result<Value, BuildRouteError> {
    let name = route["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let namespace = route["metadata"]["namespace"]
        .as_str()
        .unwrap_or(&inputs.canary.namespace)
        .to_owned();
    let no_stable = || BuildRouteError::NoStableBackend {
        kind: HTTP_ROUTE.kind,
        name: format!("{namespace}/{name}"),
        service: inputs.service.clone(),
    };
    let live_rules = route["spec"]["rules"].as_array().ok_or_else(no_stable)?;

    let mut rules = Vec::new();
    let mut found = false;
    for live in live_rules {
        if is_ab_rule(live, inputs, &namespace) {
            continue;
        }
        let mut rule = live.clone();
        let refs: Vec<Value> = rule["backendRefs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| !is_ref_to(r, &inputs.canary_service(), inputs, &namespace))
            .collect();
        let Some(stable) = refs
            .iter()
            .find(|r| is_ref_to(r, &inputs.service, inputs, &namespace))
            .cloned()
        else {
            rules.push(rule);
            continue;
        };
        found = true;
        let mut edited = Vec::new();
        for backend in refs {
            if is_ref_to(&backend, &inputs.service, inputs, &namespace) {
                edited.push(with_weight(&backend, 100 - weight));
                if weight > 0 {
                    edited.push(canary_ref(&backend, inputs, weight));
                }
            } else {
                edited.push(backend);
            }
        }
        rule["backendRefs"] = Value::Array(edited);
        if !matches.is_empty() {
            rules.push(ab_rule(&rule, &stable, inputs, matches));
        }
        rules.push(rule);
    }
    if !found {
        return Err(no_stable());
    }
    check_limits(&rules, &namespace, &name)?;
    Ok(json!({
        "apiVersion": HTTP_ROUTE.api_version,
        "kind": HTTP_ROUTE.kind,
        "metadata": super::copied_from(route, &name, &namespace),
        "spec": {"rules": rules},
    }))
}

/// The canary weight `route` carries: the canary's share on the rules that point at the stable
/// Service (the largest, if the rules disagree), 0 when only A/B rules send to the canary, `None`
/// when no rule mentions the canary.
pub fn http_route_weight(route: &Value, inputs: &RouteInputs) -> Option<i32> {
    let namespace = route["metadata"]["namespace"]
        .as_str()
        .unwrap_or(&inputs.canary.namespace);
    let canary = inputs.canary_service();
    let mut weight: Option<i32> = None;
    for rule in route["spec"]["rules"].as_array().into_iter().flatten() {
        if is_ab_rule(rule, inputs, namespace) {
            weight = weight.or(Some(0));
            continue;
        }
        let refs = rule["backendRefs"].as_array().cloned().unwrap_or_default();
        let sum = |name: &str| -> i64 {
            refs.iter()
                .filter(|r| is_ref_to(r, name, inputs, namespace))
                .map(ref_weight)
                .sum()
        };
        let has_canary = refs
            .iter()
            .any(|r| is_ref_to(r, &canary, inputs, namespace));
        if has_canary {
            let rule_weight = share(sum(&canary), sum(&inputs.service));
            weight = Some(weight.map_or(rule_weight, |w| w.max(rule_weight)));
        }
    }
    weight
}

/// Whether the route has an A/B rule: one whose every backend is the canary Service.
pub fn http_route_matched(route: &Value, inputs: &RouteInputs) -> bool {
    let namespace = route["metadata"]["namespace"]
        .as_str()
        .unwrap_or(&inputs.canary.namespace);
    route["spec"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|rule| is_ab_rule(rule, inputs, namespace))
}

/// A backendRef's weight (default 1, as the schema defaults it).
fn ref_weight(backend: &Value) -> i64 {
    backend["weight"].as_i64().unwrap_or(1)
}

/// Whether `backend` names the Service `service` in the Canary's namespace.
fn is_ref_to(backend: &Value, service: &str, inputs: &RouteInputs, route_namespace: &str) -> bool {
    let group_ok = backend["group"].as_str().is_none_or(str::is_empty);
    let kind_ok = backend["kind"].as_str().is_none_or(|k| k == "Service");
    let namespace = backend["namespace"].as_str().unwrap_or(route_namespace);
    group_ok
        && kind_ok
        && backend["name"].as_str() == Some(service)
        && namespace == inputs.canary.namespace
}

/// A rule sluice added for A/B: every backendRef names the canary Service.
fn is_ab_rule(rule: &Value, inputs: &RouteInputs, route_namespace: &str) -> bool {
    let canary = inputs.canary_service();
    rule["backendRefs"].as_array().is_some_and(|refs| {
        !refs.is_empty()
            && refs
                .iter()
                .all(|r| is_ref_to(r, &canary, inputs, route_namespace))
    })
}

fn with_weight(backend: &Value, weight: i32) -> Value {
    let mut backend = backend.clone();
    backend["weight"] = json!(weight);
    backend
}

/// The canary's backendRef: the stable one (port, filters, group, kind) renamed.
fn canary_ref(stable: &Value, inputs: &RouteInputs, weight: i32) -> Value {
    let mut backend = with_weight(stable, weight);
    backend["name"] = json!(inputs.canary_service());
    if backend.get("port").is_none() {
        backend["port"] = json!(inputs.port);
    }
    backend
}

/// The A/B rule for `rule`: the same filters and timeouts, every one of its matches combined with
/// every header match (a request must satisfy both), all of it sent to the canary. It sorts before
/// `rule` and has more header matches, so it takes precedence under the Gateway API's rules.
fn ab_rule(rule: &Value, stable: &Value, inputs: &RouteInputs, matches: &[HttpMatch]) -> Value {
    let mut ab = rule.clone();
    if let Some(object) = ab.as_object_mut() {
        // Rule names are the user's section names; the copy must not claim one.
        object.remove("name");
    }
    let base: Vec<Value> = match rule["matches"].as_array() {
        Some(list) if !list.is_empty() => list.clone(),
        _ => vec![json!({"path": {"type": "PathPrefix", "value": "/"}})],
    };
    let mut combined = Vec::new();
    for base_match in &base {
        for header_match in matches {
            let mut m = base_match.clone();
            let mut headers = m["headers"].as_array().cloned().unwrap_or_default();
            headers.extend(header_match.headers.iter().map(|h| {
                json!({
                    "name": h.name,
                    "value": h.value,
                    "type": match h.match_type {
                        HeaderMatchType::Exact => "Exact",
                        HeaderMatchType::RegularExpression => "RegularExpression",
                    },
                })
            }));
            if let Some(object) = m.as_object_mut() {
                object.insert("headers".to_owned(), Value::Array(headers));
            } else {
                let mut object = Map::new();
                object.insert("headers".to_owned(), Value::Array(headers));
                m = Value::Object(object);
            }
            combined.push(m);
        }
    }
    ab["matches"] = Value::Array(combined);
    ab["backendRefs"] = json!([canary_ref(stable, inputs, 100)]);
    ab
}

fn check_limits(rules: &[Value], namespace: &str, name: &str) -> Result<(), BuildRouteError> {
    let too_large = |limit| BuildRouteError::TooLarge {
        kind: HTTP_ROUTE.kind,
        name: format!("{namespace}/{name}"),
        limit,
    };
    if rules.len() > MAX_RULES {
        return Err(too_large("at most 16 rules"));
    }
    let counts: Vec<usize> = rules
        .iter()
        .map(|r| r["matches"].as_array().map_or(0, Vec::len))
        .collect();
    if counts.iter().any(|&c| c > MAX_MATCHES_PER_RULE) {
        return Err(too_large("at most 64 matches per rule"));
    }
    if counts.iter().sum::<usize>() > MAX_MATCHES_TOTAL {
        return Err(too_large("at most 128 matches over all rules"));
    }
    Ok(())
}
