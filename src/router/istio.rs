//! Istio `VirtualService` (networking.istio.io/v1): weighted destinations on the user's HTTP
//! routes that send to the stable Service, the canary destination `<service>-canary` beside each,
//! and for A/B one extra route per such route sending header-matched requests to the canary. Pure.
//!
//! Server-side apply: `spec.http` has no list type in the CRD, so it is atomic, exactly like
//! `HTTPRoute.spec.rules` (see `gateway`): the body carries the complete `http` list copied from the
//! live object with sluice's edits and nothing else of the spec (`hosts`, `gateways`, `tcp`, `tls`
//! stay the user's), applied with force, never without `http` once sluice owns it, and conditional
//! on the `resourceVersion` it was copied from.
//!
//! Not done: mirroring, and a `DestinationRule` for subsets (the canary destination addresses the
//! canary Service directly, so it needs none; a stable destination's `subset` is not copied to it).

use serde_json::{Map, Value, json};

use super::{BuildRouteError, RouteInputs, share};
use crate::api::names::CANARY_SUFFIX;
use crate::api::{HeaderMatchType, HttpMatch};

use super::kind::VIRTUAL_SERVICE;

/// The apply body for `vs` (the live user's VirtualService) routing `weight` percent to the
/// canary, and requests matching any of `matches` entirely to it.
pub fn virtual_service_patch(
    vs: &Value,
    inputs: &RouteInputs,
    weight: i32,
    matches: &[HttpMatch],
) -> Result<Value, BuildRouteError> {
    let name = vs["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let namespace = vs["metadata"]["namespace"]
        .as_str()
        .unwrap_or(&inputs.canary.namespace)
        .to_owned();
    let no_stable = || BuildRouteError::NoStableBackend {
        kind: VIRTUAL_SERVICE.kind,
        name: format!("{namespace}/{name}"),
        service: inputs.service.clone(),
    };
    let live_routes = vs["spec"]["http"].as_array().ok_or_else(no_stable)?;

    let mut routes = Vec::new();
    let mut found = false;
    for live in live_routes {
        if is_ab_route(live, inputs) {
            continue;
        }
        let mut route = live.clone();
        let destinations: Vec<Value> = route["route"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|d| !is_canary(d, inputs))
            .collect();
        let Some(stable) = destinations.iter().find(|d| is_stable(d, inputs)).cloned() else {
            routes.push(route);
            continue;
        };
        found = true;
        let mut edited = Vec::new();
        for destination in destinations {
            if is_stable(&destination, inputs) {
                edited.push(with_weight(&destination, 100 - weight));
                if weight > 0 {
                    edited.push(canary_destination(&destination, inputs, weight));
                }
            } else {
                edited.push(destination);
            }
        }
        route["route"] = Value::Array(edited);
        if !matches.is_empty() {
            routes.push(ab_route(&route, &stable, inputs, matches));
        }
        routes.push(route);
    }
    if !found {
        return Err(no_stable());
    }
    Ok(json!({
        "apiVersion": VIRTUAL_SERVICE.api_version,
        "kind": VIRTUAL_SERVICE.kind,
        "metadata": super::copied_from(vs, &name, &namespace),
        "spec": {"http": routes},
    }))
}

/// The canary weight `vs` carries: the canary's share on the routes that send to the stable
/// Service (the largest, if they disagree), 0 when only A/B routes send to the canary, `None` when
/// no route mentions the canary.
pub fn virtual_service_weight(vs: &Value, inputs: &RouteInputs) -> Option<i32> {
    let mut weight: Option<i32> = None;
    for route in vs["spec"]["http"].as_array().into_iter().flatten() {
        if is_ab_route(route, inputs) {
            weight = weight.or(Some(0));
            continue;
        }
        let destinations = route["route"].as_array().cloned().unwrap_or_default();
        if !destinations.iter().any(|d| is_canary(d, inputs)) {
            continue;
        }
        // Istio reads a missing weight on a lone destination as all of the traffic.
        let total = |pick: &dyn Fn(&Value) -> bool| -> i64 {
            destinations
                .iter()
                .filter(|d| pick(d))
                .map(|d| d["weight"].as_i64().unwrap_or(0))
                .sum()
        };
        let route_weight = share(
            total(&|d| is_canary(d, inputs)),
            total(&|d| is_stable(d, inputs)),
        );
        weight = Some(weight.map_or(route_weight, |w| w.max(route_weight)));
    }
    weight
}

/// Whether a destination's host names `service` in the Canary's namespace: `checkout`,
/// `checkout.shop` and `checkout.shop.svc.cluster.local` all do (for namespace `shop`);
/// `checkout.other` does not.
fn host_is(destination: &Value, service: &str, inputs: &RouteInputs) -> bool {
    let Some(host) = destination["destination"]["host"].as_str() else {
        return false;
    };
    let mut labels = host.split('.');
    labels.next() == Some(service)
        && labels
            .next()
            .is_none_or(|namespace| namespace == inputs.canary.namespace)
}

fn is_stable(destination: &Value, inputs: &RouteInputs) -> bool {
    host_is(destination, &inputs.service, inputs)
}

fn is_canary(destination: &Value, inputs: &RouteInputs) -> bool {
    host_is(destination, &inputs.canary_service(), inputs)
}

/// A route sluice added for A/B: every destination is the canary.
/// Whether the VirtualService has an A/B route: one whose every destination is the canary.
pub fn virtual_service_matched(vs: &Value, inputs: &RouteInputs) -> bool {
    vs["spec"]["http"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|route| is_ab_route(route, inputs))
}

fn is_ab_route(route: &Value, inputs: &RouteInputs) -> bool {
    route["route"].as_array().is_some_and(|destinations| {
        !destinations.is_empty() && destinations.iter().all(|d| is_canary(d, inputs))
    })
}

fn with_weight(destination: &Value, weight: i32) -> Value {
    let mut destination = destination.clone();
    destination["weight"] = json!(weight);
    destination
}

/// The canary destination: the stable one with its host's first label renamed (keeping the
/// namespace and domain the user wrote) and without a subset.
fn canary_destination(stable: &Value, inputs: &RouteInputs, weight: i32) -> Value {
    let mut destination = with_weight(stable, weight);
    let host = stable["destination"]["host"].as_str().unwrap_or_default();
    let rest = host.strip_prefix(inputs.service.as_str()).unwrap_or("");
    destination["destination"]["host"] = json!(format!("{}{CANARY_SUFFIX}{rest}", inputs.service));
    if let Some(object) = destination["destination"].as_object_mut() {
        object.remove("subset");
        if !object.contains_key("port") {
            object.insert("port".to_owned(), json!({"number": inputs.port}));
        }
    }
    destination
}

/// The A/B route for `route`: its matches (or match-all) each combined with every header match,
/// all sent to the canary. It comes first, and Istio takes the first matching route.
fn ab_route(route: &Value, stable: &Value, inputs: &RouteInputs, matches: &[HttpMatch]) -> Value {
    let mut ab = route.clone();
    if let Some(object) = ab.as_object_mut() {
        object.remove("name");
        object.remove("mirror");
        object.remove("mirrors");
        object.remove("mirrorPercentage");
    }
    let base: Vec<Value> = match route["match"].as_array() {
        Some(list) if !list.is_empty() => list.clone(),
        _ => vec![json!({})],
    };
    let mut combined = Vec::new();
    for base_match in &base {
        for header_match in matches {
            let mut m = base_match.clone();
            let mut headers = m["headers"].as_object().cloned().unwrap_or_default();
            for h in &header_match.headers {
                let condition = match h.match_type {
                    HeaderMatchType::Exact => json!({"exact": h.value}),
                    HeaderMatchType::RegularExpression => json!({"regex": h.value}),
                };
                // Istio requires lower-case header keys.
                headers.insert(h.name.to_ascii_lowercase(), condition);
            }
            if let Some(object) = m.as_object_mut() {
                object.remove("name");
                object.insert("headers".to_owned(), Value::Object(headers));
            } else {
                let mut object = Map::new();
                object.insert("headers".to_owned(), Value::Object(headers));
                m = Value::Object(object);
            }
            combined.push(m);
        }
    }
    ab["match"] = Value::Array(combined);
    ab["route"] = json!([canary_destination(stable, inputs, 100)]);
    ab
}
