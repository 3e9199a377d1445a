//! The `service` router: blue/green without a mesh, by switching the stable Service's selector to
//! the canary pods' labels (weight 100) and back (weight 0). Pure.
//!
//! `Service.spec.selector` is an atomic map for server-side apply, owned by the user's manager, so
//! the switch is applied with force and always carries the whole selector. While switched, the
//! selector the user wrote is kept in the `sluice.dev/stable-selector` annotation (in the same
//! apply), so switching back restores it exactly and the canary labels are never derived from
//! already rewritten ones; the apply at weight 0 omits the annotation, which removes it. The body
//! is conditional on the `resourceVersion` of the Service it was built from, so a selector the user
//! changed in between is not overwritten from a stale copy.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use serde_json::{Value, json};

use super::BuildRouteError;
use crate::workload::{STABLE_SELECTOR_ANNOTATION, canary_selector, stable_selector_of};

/// The apply body switching `stable` to the canary pods (`weight` 100) or back (0).
pub fn service_switch_patch(stable: &Service, weight: i32) -> Result<Value, BuildRouteError> {
    let name = stable.metadata.name.clone().unwrap_or_default();
    let namespace = stable.metadata.namespace.clone();
    let selector = stable_selector_of(stable);
    if selector.is_empty() {
        return Err(BuildRouteError::NoStableBackend {
            kind: "Service",
            name,
            service: "(a Service without a selector cannot be switched)".to_owned(),
        });
    }
    let mut metadata = json!({"name": name});
    if let Some(namespace) = namespace {
        metadata["namespace"] = json!(namespace);
    }
    if let Some(version) = &stable.metadata.resource_version {
        metadata["resourceVersion"] = json!(version);
    }
    let switched = match weight {
        0 => selector,
        100 => {
            let saved = serde_json::to_string(&selector).map_err(|source| {
                BuildRouteError::InvalidObject {
                    kind: "Service",
                    name: name.clone(),
                    source,
                }
            })?;
            metadata["annotations"] = json!({ STABLE_SELECTOR_ANNOTATION: saved });
            canary_selector(&selector)
        }
        other => return Err(BuildRouteError::NotSwitchable { weight: other }),
    };
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {"selector": switched},
    }))
}

/// 100 when the Service selects the canary pods, 0 when it selects the stable ones, `None` when
/// it selects something else (someone edited it) or has no selector.
pub fn service_weight(service: &Service) -> Option<i32> {
    let stable = stable_selector_of(service);
    let live: BTreeMap<String, String> = service
        .spec
        .as_ref()
        .and_then(|spec| spec.selector.clone())
        .unwrap_or_default();
    if stable.is_empty() {
        None
    } else if live == canary_selector(&stable) {
        Some(100)
    } else if live == stable {
        Some(0)
    } else {
        None
    }
}
