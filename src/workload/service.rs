//! The canary Service `<service>-canary` and the reading of the stable Service's selector. Pure:
//! no client, no decision about when to apply.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{BuildWorkloadError, CanaryIdentity, canary_selector, managed_labels};
use crate::api::names::canary_name;

/// Annotation the `service` router puts on the stable Service while its selector is switched to
/// the canary pods, holding the selector as the user wrote it (JSON), so it can be put back
/// exactly and the canary labels are never derived from already-rewritten ones.
pub const STABLE_SELECTOR_ANNOTATION: &str = "sluice.dev/stable-selector";

/// The stable Service's selector as the user wrote it: the one saved in
/// [`STABLE_SELECTOR_ANNOTATION`] while the `service` router has switched the Service, else the live
/// one. Every canary label is derived from this.
pub fn stable_selector_of(service: &Service) -> BTreeMap<String, String> {
    let saved = service
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(STABLE_SELECTOR_ANNOTATION))
        .and_then(|text| serde_json::from_str::<BTreeMap<String, String>>(text).ok());
    saved.unwrap_or_else(|| {
        service
            .spec
            .as_ref()
            .and_then(|spec| spec.selector.clone())
            .unwrap_or_default()
    })
}

/// Whether `live` already carries everything `desired` sets (labels, owner, selector, ports, as
/// the fields sluice writes), so applying `desired` again would change nothing.
pub fn is_in_place(desired: &Service, live: &Service) -> bool {
    let (Ok(desired), Ok(live)) = (serde_json::to_value(desired), serde_json::to_value(live))
    else {
        return false;
    };
    ["labels", "ownerReferences"]
        .iter()
        .all(|field| contains(&desired["metadata"][field], &live["metadata"][field]))
        && contains(&desired["spec"], &live["spec"])
}

/// Every value of `part` is in `whole`: objects key by key, lists element by element (of the same
/// length), anything else equal. The server's defaults in `whole` are ignored.
fn contains(part: &serde_json::Value, whole: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (part, whole) {
        (Value::Object(part), Value::Object(whole)) => part
            .iter()
            .all(|(key, value)| whole.get(key).is_some_and(|w| contains(value, w))),
        (Value::Array(part), Value::Array(whole)) => {
            part.len() == whole.len() && part.iter().zip(whole).all(|(p, w)| contains(p, w))
        }
        (part, whole) => part == whole,
    }
}

/// The controller-owned `<service>-canary`: the stable Service's ports and a selector of the
/// canary pods' rewritten labels.
///
/// It is always a plain ClusterIP Service: routers address it inside the cluster, and copying
/// `type`, `nodePort`s or `clusterIP`s would collide with the stable Service's allocations (or
/// create a second load balancer).
pub fn canary_service(
    stable: &Service,
    canary: &CanaryIdentity,
) -> Result<Service, BuildWorkloadError> {
    let name = stable
        .metadata
        .name
        .clone()
        .ok_or(BuildWorkloadError::MissingField {
            kind: "Service",
            name: "<unnamed>".to_owned(),
            field: "metadata.name",
        })?;
    let ports = stable
        .spec
        .as_ref()
        .and_then(|spec| spec.ports.as_ref())
        .map(|ports| {
            ports
                .iter()
                .map(|port| ServicePort {
                    node_port: None,
                    ..port.clone()
                })
                .collect()
        });
    Ok(Service {
        metadata: ObjectMeta {
            name: Some(canary_name(&name)),
            namespace: Some(canary.namespace.clone()),
            labels: Some(managed_labels()),
            owner_references: Some(vec![canary.owner_reference()]),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(canary_selector(&stable_selector_of(stable))),
            ports,
            ..ServiceSpec::default()
        }),
        status: None,
    })
}
