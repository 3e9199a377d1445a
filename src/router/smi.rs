//! SMI `TrafficSplit` (split.smi-spec.io/v1alpha4), for Linkerd and other SMI meshes: a
//! sluice-owned split of the apex (stable) Service between itself and `<service>-canary`. Pure.
//!
//! The stable Service is both the apex and a backend, which SMI meshes resolve to the Service's
//! own endpoints. A/B would need an `HTTPRouteGroup`; it is not offered here.

use serde_json::{Value, json};

use super::{RouteInputs, share};
use crate::workload::managed_labels;

use super::kind::TRAFFIC_SPLIT;

/// The TrafficSplit `name` sending `weight` percent to the canary. Weight 0 keeps the object with
/// the canary at weight 0 (removal deletes it).
pub fn traffic_split(name: &str, inputs: &RouteInputs, weight: i32) -> Value {
    json!({
        "apiVersion": TRAFFIC_SPLIT.api_version,
        "kind": TRAFFIC_SPLIT.kind,
        "metadata": {
            "name": name,
            "namespace": inputs.canary.namespace,
            "labels": managed_labels(),
            "ownerReferences": [inputs.canary.owner_reference()],
        },
        "spec": {
            "service": inputs.service,
            "backends": [
                {"service": inputs.service, "weight": 100 - weight},
                {"service": inputs.canary_service(), "weight": weight},
            ],
        },
    })
}

/// The canary's share of the split; `None` when no backend is the canary.
pub fn traffic_split_weight(split: &Value, inputs: &RouteInputs) -> Option<i32> {
    let backends = split["spec"]["backends"].as_array()?;
    let weight_of = |service: &str| -> Option<i64> {
        backends
            .iter()
            .filter(|b| b["service"].as_str() == Some(service))
            .map(|b| b["weight"].as_f64().map_or(0, |w| w.round() as i64))
            .reduce(|a, b| a + b)
    };
    let canary = weight_of(&inputs.canary_service())?;
    Some(share(canary, weight_of(&inputs.service).unwrap_or(0)))
}
