//! Traefik `TraefikService` (traefik.io/v1alpha1): a sluice-owned weighted round robin between the
//! stable Service and `<service>-canary`, which the user's IngressRoute names instead of the
//! Service. Pure. Header matches belong to IngressRoute rules, so A/B is not offered here.

use serde_json::{Value, json};

use super::{RouteInputs, share};
use crate::workload::managed_labels;

use super::kind::TRAEFIK_SERVICE;

/// The TraefikService `name` sending `weight` percent to the canary. Weight 0 keeps the object
/// with the canary at weight 0 (removal deletes it).
pub fn traefik_service(name: &str, inputs: &RouteInputs, weight: i32) -> Value {
    json!({
        "apiVersion": TRAEFIK_SERVICE.api_version,
        "kind": TRAEFIK_SERVICE.kind,
        "metadata": {
            "name": name,
            "namespace": inputs.canary.namespace,
            "labels": managed_labels(),
            "ownerReferences": [inputs.canary.owner_reference()],
        },
        "spec": {
            "weighted": {
                "services": [
                    {"name": inputs.service, "port": inputs.port, "weight": 100 - weight},
                    {"name": inputs.canary_service(), "port": inputs.port, "weight": weight},
                ],
            },
        },
    })
}

/// The canary's share of the weighted services; `None` when none is the canary.
pub fn traefik_service_weight(object: &Value, inputs: &RouteInputs) -> Option<i32> {
    let services = object["spec"]["weighted"]["services"].as_array()?;
    let weight_of = |name: &str| -> Option<i64> {
        services
            .iter()
            .filter(|s| {
                s["name"].as_str() == Some(name)
                    && s["kind"].as_str().is_none_or(|kind| kind == "Service")
            })
            // Traefik reads a missing weight as 1.
            .map(|s| s["weight"].as_i64().unwrap_or(1))
            .reduce(|a, b| a + b)
    };
    let canary = weight_of(&inputs.canary_service())?;
    Some(share(canary, weight_of(&inputs.service).unwrap_or(0)))
}
